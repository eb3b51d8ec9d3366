from mlsm.cli import main

main()
