from avprep.cli import main

main()
