"""Data flow: sources -> decoded uint8 images -> per-sample random views, all inside Ray Data."""
