"""fewstep's version, written into every model directory, scheduler config and output marker it makes."""

__version__ = "0.1.0"
