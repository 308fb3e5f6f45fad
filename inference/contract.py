"""The MIDOG 2025 Track 2 container contract, as constants: socket slugs, where files lie, what is written.

The stack interface is the official one (https://midog2025.deepmicroscopy.org); the points
interface takes what a Track 1 detector works on and writes (docs/interfaces.md). The patch size
and class names are the training package's too: one home for both.
"""

STACK_SLUG = "stacked-histopathology-roi-cropouts"
STACK_OUTPUT = "multiple-mitotic-figure-classification.json"
ROI_SLUG = "histopathology-region-of-interest-cropout"  # Track 1's input image
POINTS_SLUG = "mitotic-figures"  # Track 1's output: Multiple points in mm
CSV_SLUG = "candidate-points"  # this project's own: a CSV of x,y pixels
POINTS_OUTPUT = "atypical-mitotic-figures.json"
# Where a socket's file lies under /input when inputs.json gives no relative_path (grand-challenge's own).
RELATIVE_PATHS = {
    STACK_SLUG: f"images/{STACK_SLUG}",
    ROI_SLUG: "images/histopathology-roi-cropout",
    POINTS_SLUG: "mitotic-figures.json",
    CSV_SLUG: "candidate-points.csv",
}
# The second spelling is what the official Track 1 reference container writes.
POINTS_TYPES = ("Multiple points", "Mulitple points")
POINTS_VERSION = {"major": 1, "minor": 0}
IMAGE_SUFFIXES = (".tif", ".tiff", ".mha")
PATCH_SIZE = 128  # side of an official crop, in pixels
CLASSES = ("normal", "atypical")  # (negative, positive): the only classes the evaluator accepts
# The stack output's "confidence" is P(atypical) whatever the class, as the organisers' evaluator
# reads it (since its commit of 2025-07-27) and their reference container writes it. A model.json
# may say so ("confidence": "p_atypical"); it may not ask for anything else.
CONFIDENCE = "p_atypical"
