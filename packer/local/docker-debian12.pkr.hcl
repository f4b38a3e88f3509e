# A local rehearsal of the AMI bake, with no AWS: the same playbook (ansible/bake.yml),
# through the same ansible provisioner (and its SSH proxy), into a Debian 12 systemd container,
# committed as an image. Packer 1.6.6 has the docker builder built in; current Packer needs
# `packer plugins install github.com/hashicorp/docker`. tests/test_packer_local_bake.py runs it:
#   packer build -var image=<systemd image> -var app_version=<version> packer/local

variable "image" {
  type        = string
  description = "A Debian 12 image that boots systemd, e.g. the stand-in from `make images`."
}

variable "app_version" {
  type        = string
  description = "Release name of the app baked in."
  default     = "local"
}

variable "tag" {
  type        = string
  description = "Repository:tag the baked image is committed as."
  default     = "hello-packer-local:latest"
}

source "docker" "debian12" {
  image  = var.image
  pull   = false
  commit = true
  # systemd as PID 1, as on a VM, with the settings of a host that refuses --privileged.
  run_command = [
    "-d", "--cap-add", "SYS_ADMIN", "-v", "/sys/fs/cgroup:/sys/fs/cgroup:ro",
    "--tmpfs", "/run", "--tmpfs", "/run/lock", "--entrypoint", "/sbin/init", "{{.Image}}",
  ]
  changes = ["ENTRYPOINT [\"/sbin/init\"]"]
}

build {
  sources = ["source.docker.debian12"]

  provisioner "ansible" {
    playbook_file = "${path.root}/../../ansible/bake.yml"
    groups        = ["hello_app"]
    ansible_env_vars = [
      "ANSIBLE_CONFIG=${path.root}/../../ansible/ansible.cfg",
    ]
    extra_arguments = [
      # What every bake shares, as in hello-app.pkr.hcl.
      "--extra-vars", "@${path.root}/../bake-vars.yml",
      "--extra-vars", jsonencode({
        hello_app_version = var.app_version
        # Both come from AWS (S3, and RDS's trust store), out of reach here.
        hello_app_aws_cloudwatch_agent_url = ""
        hello_app_aws_rds_ca_bundle_url    = ""
      }),
    ]
  }

  post-processor "docker-tag" {
    repository = split(":", var.tag)[0]
    tag        = [split(":", var.tag)[1]]
  }
}
