"""softlabels: learning from a few images with soft labels."""

__version__ = "0.1.0"
