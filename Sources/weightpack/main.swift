import WeightPackCLI

WeightPackCommand.checkProcessor()
WeightPackCommand.main()
