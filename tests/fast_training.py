"""Training flags that keep test runs to seconds: tiny images, two folds, two epochs."""

TARGETS = "Lycorma delicatula,Acer rubrum"
FAST = ["--img-size", "64", "--batch-size", "8", "--workers", "0", "--epochs", "2", "--folds", "2"]
