import os
import sys

sys.path.insert(0, os.path.dirname(__file__))  # the numpy reference in tests/reference.py
