# The hello-app AMI: Ubuntu 24.04 with the app installed by the same Ansible role as the VMs,
# enabled but not started (the database URL arrives at boot), and the boot step, the RDS CA
# bundle and the CloudWatch agent of the role hello_app_aws (ansible/bake.yml).
# Build: packer init packer && packer build -var app_version=... -var git_sha=... packer

variable "region" {
  type        = string
  description = "AWS region to build the AMI in."
  default     = "eu-west-1"
}

variable "instance_type" {
  type        = string
  description = "Instance type of the temporary build instance."
  default     = "t3.micro"
}

variable "subnet_id" {
  type        = string
  description = "Subnet for the build instance; it needs outbound internet. Empty: the default VPC."
  default     = ""
}

variable "app_version" {
  type        = string
  description = "Version of the app baked in: its release directory, and the AMI's name and tags."
  default     = "dev"
}

variable "git_sha" {
  type        = string
  description = "Git commit the AMI is built from, recorded as a tag."
  default     = "unknown"
}

locals {
  build_date = formatdate("YYYY-MM-DD'T'hh:mm:ssZ", timestamp())
  ami_name   = "hello-app-${var.app_version}-${formatdate("YYYYMMDDhhmmss", timestamp())}"
  tags = {
    Name       = local.ami_name
    App        = "hello-app"
    AppVersion = var.app_version
    GitSha     = var.git_sha
    BuildDate  = local.build_date
    BaseAMI    = "{{ .SourceAMI }}"
  }
  # ansible/bake.yml sets the bake mode (installed and enabled, not started, no database).
  ansible_extra_vars = {
    hello_app_version = var.app_version
  }
}

source "amazon-ebs" "ubuntu" {
  region        = var.region
  instance_type = var.instance_type
  subnet_id     = var.subnet_id
  ami_name      = local.ami_name
  ssh_username  = "ubuntu"

  # The temporary security group admits SSH from this machine's public IP only (looked up at
  # https://checkip.amazonaws.com), not from any address, which is Packer's default.
  temporary_security_group_source_public_ip = true

  source_ami_filter {
    filters = {
      name                = "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-*"
      root-device-type    = "ebs"
      virtualization-type = "hvm"
    }
    owners      = ["099720109477"] # Canonical
    most_recent = true
  }

  # IMDSv2 only, on the build instance.
  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }

  # Encrypted root volume, and an AMI whose snapshot is encrypted too.
  launch_block_device_mappings {
    device_name           = "/dev/sda1"
    volume_size           = 8
    volume_type           = "gp3"
    iops                  = 3000 # gp3's baseline, stated because Packer 1.6.6 insists
    throughput            = 125
    encrypted             = true
    delete_on_termination = true
  }
  encrypt_boot = true

  tags          = local.tags
  snapshot_tags = local.tags
  # The deploy role may launch, stop and image only instances with PackerBake=hello-app.
  run_tags        = { Name = "packer-${local.ami_name}", PackerBake = "hello-app" }
  run_volume_tags = { PackerBake = "hello-app" }
}

build {
  sources = ["source.amazon-ebs.ubuntu"]

  # cloud-init runs apt on first boot; wait for it so that apt's lock is free.
  provisioner "shell" {
    inline = ["cloud-init status --wait || true"]
  }

  provisioner "ansible" {
    playbook_file = "${path.root}/../ansible/bake.yml"
    groups        = ["hello_app"]
    user          = "ubuntu"
    ansible_env_vars = [
      "ANSIBLE_CONFIG=${path.root}/../ansible/ansible.cfg",
    ]
    extra_arguments = [
      # What every bake shares, with the OpenSSH workarounds for Packer's SSH proxy.
      "--extra-vars", "@${path.root}/bake-vars.yml",
      "--extra-vars", jsonencode(local.ansible_extra_vars),
    ]
  }

  post-processor "manifest" {
    output     = "${path.root}/manifest.json"
    strip_path = true
    custom_data = {
      app_version = var.app_version
      git_sha     = var.git_sha
      build_date  = local.build_date
    }
  }
}
