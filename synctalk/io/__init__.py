"""File I/O: atomic writes, video/audio decode and encode."""
