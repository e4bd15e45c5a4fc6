"""Portrait paste-back masks that survive a mouth moving differently from the source frame.

The original's Portrait-Sync blends render * M + original * (1 - M) with M = the source frame's
feathered face mask. With new audio the rendered jaw is not where the source jaw was:

* rendered mouth opens *more* than the source -> the rendered chin reaches below the source face mask
  and is cut off at the source's chin line (the source neck shows over the rendered chin);
* rendered mouth opens *less* -> inside the mask the render shows neck where the source had chin
  (fine), but right below the mask the source still shows its own, lower chin: a "double chin".

So the paste region here is wider than the face, and only covers what the render can provide:

    region = (source face  |  source neck  |  rendered head alpha > 0.5 below the source face's centre)
             minus source hair
    M      = Gaussian feather of region (the subject's ``portrait_feather_px``)

The neck is in the region because the render's neck never carries a jaw: in the default mode it is the
walked frame's ``torso.mp4`` (neck inpainted up under the head), with ``--torso`` it is the trained
torso model. Hair, ears, shoulders, clothes and background stay the source frame's pixels (the detail
Portrait-Sync exists for). The rendered head's lower part is added so a jaw that drops below the source
chin is kept, not clipped; its upper part is not, so a head that sits a little off the source does not
paint rendered hair over the source background.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from synctalk import subject as S

REGION_ALPHA = 0.5


def opencv_sigma(kernel: int) -> float:
    """The sigma cv2.GaussianBlur picks for a kernel size when sigma is 0 (feather_mask's rule)."""
    return 0.3 * ((kernel - 1) * 0.5 - 1) + 0.8


def gaussian_feather(region: torch.Tensor, feather_px: int) -> torch.Tensor:
    """[B, H, W] float {0,1} -> soft mask in [0, 1] (separable Gaussian, odd kernel, zero padding)."""
    k = int(feather_px)
    if k <= 0:
        return region
    k += 1 - k % 2
    sigma = opencv_sigma(k)
    x = torch.arange(k, device=region.device, dtype=torch.float32) - k // 2
    taps = torch.exp(-0.5 * (x / sigma) ** 2)
    taps = taps / taps.sum()
    img = region[:, None].float()
    img = F.conv2d(F.pad(img, (k // 2, k // 2, 0, 0), mode="replicate"), taps.view(1, 1, 1, k))
    img = F.conv2d(F.pad(img, (0, 0, k // 2, k // 2), mode="replicate"), taps.view(1, 1, k, 1))
    return img[:, 0].clamp(0, 1)


def paste_region(face: torch.Tensor, labels: torch.Tensor, head_alpha: torch.Tensor) -> torch.Tensor:
    """Hard paste region [B, H, W] bool from the source face mask (uint8 0/255 or bool), the source
    parsing labels (uint8) and the rendered head alpha (float)."""
    face = face > 0 if face.dtype != torch.bool else face
    rows = torch.arange(face.shape[1], device=face.device)[None, :, None]
    # Centre row of the source face; frames without a face mask fall back to "no rendered extension".
    has_face = face.flatten(1).any(dim=1)
    face_rows = torch.where(face.any(dim=2), rows[:, :, 0].float(), torch.nan)
    centre = torch.nanmean(face_rows, dim=1)
    centre = torch.where(has_face, centre, torch.full_like(centre, float(face.shape[1])))
    lower = rows.float() >= centre[:, None, None]
    region = face | (labels == S.LABEL_NECK) | ((head_alpha > REGION_ALPHA) & lower)
    return region & (labels != S.LABEL_HAIR)


def paste_back(render: torch.Tensor, source: torch.Tensor, face: torch.Tensor, labels: torch.Tensor,
               head_alpha: torch.Tensor, feather_px: int) -> tuple[torch.Tensor, torch.Tensor]:
    """render/source [B, H, W, 3] float in [0, 1] -> (blended frames, soft mask [B, H, W])."""
    mask = gaussian_feather(paste_region(face, labels, head_alpha).float(), feather_px)
    return torch.lerp(source, render, mask[..., None]), mask
