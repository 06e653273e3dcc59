from skinlesion.predict.cli import main

raise SystemExit(main())
