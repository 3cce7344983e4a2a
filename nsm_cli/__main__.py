from nsm_cli.cli import main

main()
