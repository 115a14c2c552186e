"""`python -m sidecar` is the `syncar` command."""

from sidecar.cli import main

raise SystemExit(main())
