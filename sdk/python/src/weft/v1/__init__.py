"""Generated weft.v1 stubs (scripts/genproto.py); do not edit."""
