# Plugins for current Packer (`packer init packer`). Kept apart because Packer 1.6.6, the one
# Debian ships, has these builders built in and rejects this block; `make lint-packer`
# validates hello-app.pkr.hcl on its own with it.
packer {
  required_version = ">= 1.10.0"
  required_plugins {
    amazon = {
      version = ">= 1.3.0"
      source  = "github.com/hashicorp/amazon"
    }
    ansible = {
      version = ">= 1.1.0"
      source  = "github.com/hashicorp/ansible"
    }
  }
}
