from fewstep.cli import main

raise SystemExit(main())
