"""CLI sub-commands, one module each (see boundc.cli)."""
