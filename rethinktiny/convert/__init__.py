"""Hugging Face export/import (one key table plus the rotary permute)."""
