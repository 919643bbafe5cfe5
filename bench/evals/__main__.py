from bench.evals.run import main

main()
