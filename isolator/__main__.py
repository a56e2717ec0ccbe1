from isolator.cli import main

raise SystemExit(main())
