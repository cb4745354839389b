# Registries for the three tuneforge images (build them with buildah from the repository's Dockerfiles and
# push before the Helm release is applied; see README.md). Tags are immutable: a tag always means one image.

resource "aws_ecr_repository" "this" {
  for_each             = toset(["service", "operator", "trainer"])
  name                 = "tuneforge/${each.value}"
  image_tag_mutability = "IMMUTABLE"
  image_scanning_configuration {
    scan_on_push = true
  }
  encryption_configuration {
    encryption_type = "KMS"
    kms_key         = aws_kms_key.this.arn
  }
}

resource "aws_ecr_lifecycle_policy" "this" {
  for_each   = aws_ecr_repository.this
  repository = each.value.name
  policy = jsonencode({
    rules = [{
      rulePriority = 1
      description  = "keep the 30 newest images"
      selection    = { tagStatus = "any", countType = "imageCountMoreThan", countNumber = 30 }
      action       = { type = "expire" }
    }]
  })
}
