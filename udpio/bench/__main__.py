from udpio.bench._cli import main

raise SystemExit(main())
