from lesionsynth.cli import main

main()
