from skinlesion.report import main

raise SystemExit(main())
