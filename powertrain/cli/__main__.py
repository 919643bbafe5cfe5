from powertrain.cli import main

main()
