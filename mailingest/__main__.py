from mailingest.cli import main

raise SystemExit(main())
