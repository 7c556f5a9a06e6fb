"""SynthWorld colours, exact sRGB (the SynthWorld spec, "Palette"). Import these; never retype them."""

BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (0, 0, 0),
    "white": (255, 255, 255),
    "gray": (128, 128, 128),
}

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 70),
    "blue": (40, 80, 230),
    "yellow": (240, 210, 40),
    "purple": (150, 60, 210),
    "orange": (250, 140, 30),
    "cyan": (40, 200, 220),
    "pink": (250, 130, 200),
}

WALL_RGB: tuple[int, int, int] = (128, 128, 128)

# The occluding wall would vanish into a gray background, so occlusion scenes use these only.
WALL_BACKGROUNDS: tuple[str, ...] = ("black", "white")
