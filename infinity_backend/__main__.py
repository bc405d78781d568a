from infinity_backend.cli import main

raise SystemExit(main())
