"""`python -m ofa_ve_client` is the `ofa-ve` command."""

from .cli import main

raise SystemExit(main())
