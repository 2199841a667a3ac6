from pacos.cli import main

main()
