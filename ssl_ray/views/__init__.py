"""Views: the augmentations and batch recipes that turn decoded images into what a method trains on."""
