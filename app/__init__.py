"""hello-app: a Bottle app served by waitress that answers Hello World."""
