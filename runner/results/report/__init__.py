"""The HTML report: the page (`html`, `page`) and its image thumbnails (`thumbs`)."""
