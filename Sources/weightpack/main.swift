import WeightPackCLI

WeightPackCommand.main()
