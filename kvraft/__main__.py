from kvraft.cli import main

main()
