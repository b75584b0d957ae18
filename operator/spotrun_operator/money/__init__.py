"""Floor 2, money: prices (the table, AWS spot history on a thread of its own), what a run
spent and the budget rule. Only ``aws_prices`` talks to AWS."""
