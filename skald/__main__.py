from __future__ import annotations

from skald.cli import main

raise SystemExit(main())
