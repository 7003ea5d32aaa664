"""Graft trainer: runs inside the containers (and locally) to fine-tune a backbone."""
