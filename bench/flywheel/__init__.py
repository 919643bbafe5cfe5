"""Fine-tuning methods: what each costs and what it buys."""
