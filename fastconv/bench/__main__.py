"""``python -m fastconv.bench``: the same as ``fastconv bench``."""

from fastconv.bench import main

raise SystemExit(main())
