terraform {
  # terraform test with mock_provider needs 1.7; CI runs the 1.15 engine.
  required_version = ">= 1.7"

  required_providers {
    aws = {
      source = "hashicorp/aws"
      # CI applies with 3.39 against moto; 5.x validates. See the README for what
      # each is checked for.
      version = ">= 3.39, < 6.0"
    }
  }
}
