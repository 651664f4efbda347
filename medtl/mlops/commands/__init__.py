"""One module a `medtl` sub-command: `register(subparsers)` adds its parser."""
