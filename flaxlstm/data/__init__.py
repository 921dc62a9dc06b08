"""Data sets: IMDB reviews (``imdb``) and synthetic sequence tasks (``synthetic``)."""
