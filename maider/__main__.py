from maider.cli import main

main()
