from nurture.cli.main import app

app()
