"""Named index lists of mediapipe's 478-point face mesh (468 mesh points + 10 iris points).

Kept as plain tuples so training/rendering code can use them without importing mediapipe (the GPU
machine has none). tests/test_landmarks.py checks the loops against mediapipe's own connection sets.

Side convention: ``LEFT``/``RIGHT`` are the *subject's* own left/right, as in mediapipe's
``FACEMESH_LEFT_EYE``. In an unmirrored video the subject's left eye appears on the image's right
(larger x). Closed contours are listed in order around the loop, so they can be filled as polygons.
"""

from __future__ import annotations

N_POINTS = 478

# Face oval, clockwise in the image starting at the top of the forehead (10), chin at 152.
FACE_OVAL = (10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377,
             152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109)
FOREHEAD_TOP = 10
CHIN = 152
CHEEK_LEFT = 454        # widest oval points, about ear level
CHEEK_RIGHT = 234
JAW_ANGLE_LEFT = 397    # where the jaw line turns up towards the ear, about mouth level
JAW_ANGLE_RIGHT = 172
# Lower face contour from the subject's right jaw angle through the chin to the left jaw angle.
JAW_LINE = (172, 136, 150, 149, 176, 148, 152, 377, 400, 378, 379, 365, 397)

LIPS_OUTER = (61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291, 375, 321, 405, 314, 17, 84, 181, 91, 146)
LIPS_INNER = (78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308, 324, 318, 402, 317, 14, 87, 178, 88, 95)
MOUTH_CORNERS = (61, 291)
LIP_INNER_UPPER_MID = 13
LIP_INNER_LOWER_MID = 14

# Eye outlines: outer corner, upper lid to the inner corner, lower lid back.
EYE_LEFT = (263, 466, 388, 387, 386, 385, 384, 398, 362, 382, 381, 380, 374, 373, 390, 249)
EYE_RIGHT = (33, 246, 161, 160, 159, 158, 157, 173, 133, 155, 154, 153, 145, 144, 163, 7)
# Six points per eye for the eye aspect ratio, in the order (corner, upper, upper, corner, lower, lower):
# EAR = (|p1-p5| + |p2-p4|) / (2 |p0-p3|)
EAR_LEFT = (362, 385, 387, 263, 373, 380)
EAR_RIGHT = (33, 160, 158, 133, 153, 144)
EYE_CORNERS_LEFT = (362, 263)    # (inner, outer)
EYE_CORNERS_RIGHT = (133, 33)    # (inner, outer)

IRIS_LEFT = (474, 475, 476, 477)
IRIS_RIGHT = (469, 470, 471, 472)
IRIS_CENTER_LEFT = 473
IRIS_CENTER_RIGHT = 468

# Brows: upper edge from the outer end to the inner end, then the lower edge back.
BROW_LEFT_UPPER = (300, 293, 334, 296, 336)
BROW_LEFT_LOWER = (276, 283, 282, 295, 285)
BROW_RIGHT_UPPER = (70, 63, 105, 66, 107)
BROW_RIGHT_LOWER = (46, 53, 52, 65, 55)
BROW_LEFT = BROW_LEFT_UPPER + BROW_LEFT_LOWER[::-1]
BROW_RIGHT = BROW_RIGHT_UPPER + BROW_RIGHT_LOWER[::-1]
BROW_INNER_LEFT = (336, 285, 296)
BROW_INNER_RIGHT = (107, 55, 66)
BROW_OUTER_LEFT = (300, 276, 293)
BROW_OUTER_RIGHT = (70, 46, 63)

NOSE_BRIDGE = (168, 6, 197, 195, 5, 4, 1)   # from between the eyes down to the tip
NOSE_TIP = 1
# Loop around the lower nose (tip, right wing, base, left wing), as in mediapipe's FACEMESH_NOSE.
NOSE_LOWER = (4, 45, 220, 115, 48, 64, 98, 97, 2, 326, 327, 294, 278, 344, 440, 275)

# Points that move with the skull but hardly with expressions (no lids, brows, lips or jaw): nose
# bridge, eye corners, temples, cheekbones, nostril wings, upper forehead. Used to fit the rigid
# head pose (Procrustes) before measuring expressions.
RIGID = (168, 6, 197, 195, 5, 4, 1, 33, 133, 362, 263, 127, 356, 234, 454, 116, 345, 123, 352,
         98, 327, 10, 151, 9)
