from skinlesion.data.synthetic.cli import main

raise SystemExit(main())
