"""OpenUni: a frozen InternVL3 plus learned queries conditioning a SANA diffusion transformer."""

__version__ = "0.1.0"
