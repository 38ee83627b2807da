from telephony_agent.cli import main

raise SystemExit(main())
