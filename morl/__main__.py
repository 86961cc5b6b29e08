from morl.cli import main

main()
