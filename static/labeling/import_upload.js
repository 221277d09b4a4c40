// Django keeps only base names of uploads: send each folder file's relative path alongside.
document.getElementById("id_folder").addEventListener("change", function () {
  document.getElementById("id_paths").value = JSON.stringify(Array.from(this.files, (f) => f.webkitRelativePath || f.name));
});
