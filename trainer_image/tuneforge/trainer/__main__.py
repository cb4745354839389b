from tuneforge.trainer.cli import main

raise SystemExit(main())
